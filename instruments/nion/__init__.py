"""Nion Swift backend: the microscope protocols over Nion's ``nion.instrumentation`` API.

Headless it starts Nion's own simulator, ``nionswift-usim``, in this process; inside Nion
Swift on a microscope it attaches to the hardware sources Swift has registered (the real
scan and EELS camera, the real STEM controller). The same code drives both.
"""
