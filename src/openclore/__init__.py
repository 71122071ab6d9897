"""openclore: a self-hostable GPU-rental marketplace that speaks the Clore.ai API v1."""

import warnings

# asyncssh (the gateway's and the agent's SSH) still supports DSA keys and so touches
# cryptography's deprecated DSA classes on import: ten warning lines on every start, about keys
# openclore never uses
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh(\.|$)")
