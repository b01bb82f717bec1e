-- `attempts` counts the runs a job started (shown by the API). What may end a job:
-- `failures`: runs that failed by themselves with an error worth retrying (a resource error of
-- the index, say); `crashes`: runs that kb did not survive while it was splitting the document
-- into chunks, the one step that parses the document in-process (extraction runs in a child
-- with limits). A SIGKILL, a restart or a crash at any other point counts against neither.
ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
