"""The tests' SMTP server: aiosmtpd's Maildir handler, which also refuses
(550, a permanent failure) every recipient whose local part starts with
"refused", refuses the sender (554 at MAIL FROM, as a provider that paused
the account) while a file named "refuse-sender" is in its Maildir, and names
its pid in its NOOP reply, so a test knows the server on a port is the child
it started."""

import os

from aiosmtpd.handlers import Mailbox


class RefusingMailbox(Mailbox):
    async def handle_NOOP(self, server, session, envelope, arg):
        return f"250 OK pid={os.getpid()}"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if os.path.exists(os.path.join(self.mail_dir, "refuse-sender")):
            return "554 5.7.1 Sending paused for this account"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].startswith("refused"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"
