"""What leaves the search: export (best, a trial, the Pareto front), the report, evaluation servers (protocols,
submit)."""
