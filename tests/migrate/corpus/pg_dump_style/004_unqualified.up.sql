-- Names no schema: it must land in the runner's default (public), whatever the migrations
-- before it set.
CREATE TABLE IF NOT EXISTS where_am_i (id integer PRIMARY KEY);
