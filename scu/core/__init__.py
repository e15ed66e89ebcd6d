"""Framework-free controller core: bits accounting, controllers, telemetry and actions.

Nothing in this package imports torch, mlx or any other framework, so every backend
shares exactly the same control logic.
"""
