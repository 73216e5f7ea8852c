"""Testbeds: small real models on which the pack's claims are measured (plain torch, no ComfyUI)."""
