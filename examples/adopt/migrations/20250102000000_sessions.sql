-- Sessions for the `/me` route's middleware.
CREATE TABLE IF NOT EXISTS sessions(
    token TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0
);
