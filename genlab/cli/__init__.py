"""genlab.cli"""
