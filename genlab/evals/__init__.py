"""genlab.evals"""
