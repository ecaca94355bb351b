-- A job's retention (seconds it is kept once finished; NULL: until deleted), shown by job_info.
ALTER TABLE jobs ADD COLUMN retention bigint;
