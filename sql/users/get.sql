SELECT username, full_name, email, is_email_verified, password_changed_at, created_at
FROM users
WHERE username = $1
