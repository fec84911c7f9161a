"""The student zoo and what ships: the students (a registry), their input spec, int8 twins, the deployed file per
format, and the sizes measured before training."""
