-- The row, locked until the verification commits: two clicks at once
-- verify once.
SELECT is_used FROM verify_emails WHERE id = $1
FOR UPDATE
