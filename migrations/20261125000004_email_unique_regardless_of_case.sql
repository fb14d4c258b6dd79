-- One account per mailbox: Alice@EXAMPLE.com and alice@example.com are the
-- same address, so the index is on lower(email). The address is still
-- stored as given (a person sees it the way they typed it).
--
-- Accounts created before this index may share an address in another case.
-- They are kept, working as before, and marked: the oldest of each group
-- keeps the address for the index, the later ones are left out of it. No new
-- account can join any group.
ALTER TABLE users ADD COLUMN email_case_duplicate boolean NOT NULL DEFAULT false;

UPDATE users u
SET email_case_duplicate = true
WHERE EXISTS (
    SELECT 1 FROM users o
    WHERE lower(o.email) = lower(u.email)
      AND (o.created_at, o.username) < (u.created_at, u.username)
);

CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email))
WHERE NOT email_case_duplicate;

-- Look-ups by address (sign-up's check, the resend request) use this.
CREATE INDEX users_email_lower ON users (lower(email));
