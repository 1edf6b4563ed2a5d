-- A version 1 run store (gitops-ansible before issue 14): one converge of prod.
BEGIN TRANSACTION;
CREATE TABLE environments (
    env TEXT PRIMARY KEY, applied_revision TEXT, applied_run TEXT, applied_at REAL,
    good_revision TEXT, good_run TEXT, good_at REAL, checked_revision TEXT, checked_at REAL,
    refused_revision TEXT, refused_run TEXT, refused_message TEXT,
    fetch_error TEXT, fetch_error_at REAL, suspended_reason TEXT, suspended_at REAL, drift_revision TEXT, drift_run TEXT, drift_at REAL, drifted_hosts TEXT);
INSERT INTO "environments" VALUES('prod','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','20261130T100000Z-aaaaaa',1000.0,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','20261130T100000Z-aaaaaa',1000.0,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',1000.0,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,'[]');
CREATE TABLE host_results (
    run_id TEXT NOT NULL REFERENCES runs(id), host TEXT NOT NULL, platform TEXT,
    outcome TEXT NOT NULL, ok INTEGER, changed INTEGER, failed INTEGER, unreachable INTEGER,
    skipped INTEGER, message TEXT, PRIMARY KEY (run_id, host));
CREATE TABLE runs (
    id TEXT PRIMARY KEY, env TEXT NOT NULL, mode TEXT NOT NULL, trigger TEXT NOT NULL,
    ref TEXT, revision TEXT, status TEXT NOT NULL, exit_code INTEGER, check_mode INTEGER NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, message TEXT, pid INTEGER, artifacts TEXT);
INSERT INTO "runs" VALUES('20261130T100000Z-aaaaaa','prod','pull','schedule',NULL,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','changed',2,0,990.0,1.79613671587243127827e+09,'1 of 1 hosts changed',6310,NULL);
CREATE TABLE task_results (
    run_id TEXT NOT NULL REFERENCES runs(id), seq INTEGER NOT NULL, host TEXT, task TEXT,
    role TEXT, status TEXT, changed INTEGER, duration REAL, message TEXT);
CREATE INDEX runs_env ON runs (env, started_at);
CREATE INDEX task_results_run ON task_results (run_id, seq);
COMMIT;
PRAGMA user_version = 1;
