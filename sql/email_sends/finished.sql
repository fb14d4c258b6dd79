-- What became of a handed-over attempt.
UPDATE email_sends SET outcome = $2, detail = $3, finished_at = now() WHERE id = $1
