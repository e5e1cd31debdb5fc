"""Coordinator: holds the proxy set, queries site teachers and distils the student."""
