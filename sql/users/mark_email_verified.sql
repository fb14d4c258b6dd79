UPDATE users SET is_email_verified = true WHERE username = $1
RETURNING username
