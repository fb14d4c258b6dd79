-- Requests for a new verification link, one row per address (lower case),
-- whether or not the address belongs to anyone: the limit of one request per
-- interval must answer the same either way.
CREATE TABLE verify_email_resends (
    email        text        PRIMARY KEY,
    requested_at timestamptz NOT NULL
);
