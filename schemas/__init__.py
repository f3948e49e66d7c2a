"""The audit-event contracts: Avro schemas (every version), JSON Schema, action catalogue."""
