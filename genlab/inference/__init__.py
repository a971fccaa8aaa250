"""genlab.inference"""
