"""Compute voucher programmes (算力券), applications, vouchers and redemptions."""
