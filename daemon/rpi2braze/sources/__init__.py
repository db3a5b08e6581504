"""Where export folders come from. Every source offers the same small interface (`Source`)."""
