INSERT INTO outbox_checkpoints (queue, position) VALUES ($1, $2)
