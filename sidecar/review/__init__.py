"""Human review: routing rules, the review store, the audit chain, the review API and console."""
