"""Core layer of the retention service: customers, orders, events, keys, audit and shared infrastructure."""
