SELECT code_hash, is_used, expired_at > now() AS "is_live!" FROM verify_emails WHERE id = $1
FOR UPDATE
