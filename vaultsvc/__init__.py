"""vaultsvc: the secrets vault of the Interakt platform."""
