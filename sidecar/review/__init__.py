"""Human review: the review store (SQLite), the audit chain, the review API and the console."""
