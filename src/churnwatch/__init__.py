"""churnwatch: customer-churn early warning from event histories."""

__version__ = "0.1.0"
