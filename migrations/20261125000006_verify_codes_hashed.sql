-- Verification codes are stored as their SHA-256, not as themselves: a copy
-- of the database (a backup, a replica, a read-only role) must not be enough
-- to verify anyone's address. Each send of a task's email makes a new code
-- and replaces the hash, so the newest link is the one that works.
ALTER TABLE verify_emails ADD COLUMN code_hash bytea;
UPDATE verify_emails SET code_hash = sha256(convert_to(secret_code, 'UTF8'));
ALTER TABLE verify_emails ALTER COLUMN code_hash SET NOT NULL;
ALTER TABLE verify_emails DROP COLUMN secret_code;
