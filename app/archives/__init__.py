"""Archive adapters (FHIR, DICOMweb), their configuration and their credentials."""
