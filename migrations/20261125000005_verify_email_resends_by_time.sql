-- Old requests for a new link are pruned by time.
CREATE INDEX verify_email_resends_requested_at ON verify_email_resends (requested_at);
