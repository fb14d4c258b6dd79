INSERT INTO users (username, hashed_password, full_name, email)
VALUES ($1, $2, $3, $4)
RETURNING username, full_name, email, is_email_verified, password_changed_at, created_at
