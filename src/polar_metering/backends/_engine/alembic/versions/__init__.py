"""One module per schema version; each moves ``pm_info.schema_version`` forward by one."""
