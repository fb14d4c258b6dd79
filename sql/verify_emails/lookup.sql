SELECT secret_code, is_used FROM verify_emails WHERE id = $1
