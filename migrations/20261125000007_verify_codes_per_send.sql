-- Each send's code is kept, as its hash, with its own expiry: a link a person
-- already received keeps working after a later send of the same task (a
-- retry after an SMTP timeout that did deliver, the repeat after a crash),
-- until its own expiry. The row of verify_emails stays one per task.
CREATE TABLE verify_email_codes (
    verify_email_id bigint      NOT NULL REFERENCES verify_emails (id) ON DELETE CASCADE,
    code_hash       bytea       NOT NULL,
    expired_at      timestamptz NOT NULL,
    PRIMARY KEY (verify_email_id, code_hash)
);
INSERT INTO verify_email_codes (verify_email_id, code_hash, expired_at)
SELECT id, code_hash, expired_at FROM verify_emails;
ALTER TABLE verify_emails DROP COLUMN code_hash;
ALTER TABLE verify_emails DROP COLUMN expired_at;
