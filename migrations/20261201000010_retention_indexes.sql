-- What the retention loop deletes by: each prune reads the old end of one
-- index, never the whole table. IF NOT EXISTS: on a large database an
-- operator builds them CONCURRENTLY first (README, "Sizing"), and this
-- migration, in one transaction, then holds no write lock for long.
CREATE INDEX IF NOT EXISTS task_ledger_completed_at ON task_ledger (completed_at);
CREATE INDEX IF NOT EXISTS email_sends_started_at ON email_sends (started_at);
CREATE INDEX IF NOT EXISTS verify_email_codes_expired_at ON verify_email_codes (expired_at);
CREATE INDEX IF NOT EXISTS verify_emails_created_at ON verify_emails (created_at);
CREATE INDEX IF NOT EXISTS users_unverified_created_at ON users (created_at) WHERE NOT is_email_verified;
-- An expired account's verification rows go with it (ON DELETE CASCADE): by
-- this index, not by a scan of the table per account.
CREATE INDEX IF NOT EXISTS verify_emails_username ON verify_emails (username);
