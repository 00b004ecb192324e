-- 013_api_key_usage (down): forgets when keys were last used; the keys themselves stay.
DROP TABLE IF EXISTS api_key_usage;
