-- 007_api_keys (down): removes every API key; clients lose access until keys are re-issued.
DROP TABLE IF EXISTS api_keys;
