-- One send's code (its hash), valid for $3 seconds from now.
INSERT INTO verify_email_codes (verify_email_id, code_hash, expired_at)
VALUES ($1, $2, now() + make_interval(secs => $3::float8))
