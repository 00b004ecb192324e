-- 008_audit_log (down): removes the audit trail. Export it first if it must be kept.
DROP TABLE IF EXISTS audit_log;
