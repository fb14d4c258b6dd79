-- A task an operator deleted (`tasks delete`, the dashboard) is recorded in
-- the ledger like a completed one, so no redelivery, relay retry or Redis
-- loss runs it again; deleted_by names who asked.
ALTER TABLE task_ledger ADD COLUMN deleted_by text;
