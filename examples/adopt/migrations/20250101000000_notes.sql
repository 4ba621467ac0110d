-- `IF NOT EXISTS`: a restored backup made before the app used sqlx's
-- migrations already has the table; the reopen records the migration.
CREATE TABLE IF NOT EXISTS notes(
    id INTEGER PRIMARY KEY,
    body TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
