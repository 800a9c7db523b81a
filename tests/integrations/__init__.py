"""Tests of the FastAPI, Django and Flask integrations, each driving its example app."""
