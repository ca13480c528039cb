"""Write the built-in synthetic data set: python scripts/make_synthetic.py out_dir=DIR n_customers=N

The same as `churnwatch make-synthetic ...` (src/churnwatch/cli/make_synthetic.py): a thin wrapper.
"""

from churnwatch.cli.make_synthetic import main

if __name__ == "__main__":
    main()
