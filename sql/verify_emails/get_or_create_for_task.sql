-- The first attempt of a task creates the row; any later attempt of the same
-- task gets the same row back, so a repeated email carries the same link.
WITH created AS (
    INSERT INTO verify_emails (task_id, username, email, secret_code)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (task_id) DO NOTHING
    RETURNING id, email, secret_code
)
SELECT id AS "id!", email AS "email!", secret_code AS "secret_code!" FROM created
UNION ALL
SELECT id, email, secret_code FROM verify_emails WHERE task_id = $1
LIMIT 1
