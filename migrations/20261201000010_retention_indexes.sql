-- What the retention loop deletes by: each prune reads the old end of one
-- index, never the whole table.
CREATE INDEX task_ledger_completed_at ON task_ledger (completed_at);
CREATE INDEX email_sends_started_at ON email_sends (started_at);
CREATE INDEX verify_email_codes_expired_at ON verify_email_codes (expired_at);
CREATE INDEX verify_emails_created_at ON verify_emails (created_at);
CREATE INDEX users_unverified_created_at ON users (created_at) WHERE NOT is_email_verified;
