# Voucher programme accounts, and what compute vouchers funded of a charge.
# The two sums checked on a charge are rounded to the fen in the check
# itself: SQLite keeps decimals as binary floats (9.88 + 113.57 != 123.45).

import django.db.models.expressions
import django.db.models.functions.math
from decimal import Decimal
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0001_ledger_holds_usage_settlement'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='charge',
            name='charge_funded_exactly',
        ),
        migrations.RemoveConstraint(
            model_name='charge',
            name='charge_split_exact',
        ),
        migrations.AddField(
            model_name='charge',
            name='voucher_funded',
            field=models.DecimalField(decimal_places=2, default=Decimal('0.00'), help_text="Paid by the buyer's compute vouchers (see vouchers.ChargeSubsidy)", max_digits=18),
        ),
        migrations.AlterField(
            model_name='account',
            name='kind',
            field=models.CharField(choices=[('available', 'Buyer: available'), ('held', 'Buyer: held in escrow'), ('debt', 'Buyer: usage owed beyond the hold'), ('payable', 'Provider: earned, not yet paid out'), ('disputed', 'Provider: held back under dispute'), ('commission', 'Platform: commission revenue'), ('clearing', 'Platform: external bank clearing'), ('adjustments', 'Platform: operator adjustments'), ('budget', 'Voucher programme: uncommitted budget'), ('lapsed', 'Voucher programme: balances forfeited at expiry'), ('voucher', 'Voucher: issued, not yet redeemed')], max_length=16),
        ),
        migrations.AddConstraint(
            model_name='charge',
            constraint=models.CheckConstraint(condition=models.Q(('gross', django.db.models.functions.math.Round(django.db.models.expressions.CombinedExpression(models.F('commission'), '+', models.F('provider_share')), 2))), name='charge_split_exact'),
        ),
        migrations.AddConstraint(
            model_name='charge',
            constraint=models.CheckConstraint(condition=models.Q(('gross', django.db.models.functions.math.Round(django.db.models.expressions.CombinedExpression(django.db.models.expressions.CombinedExpression(django.db.models.expressions.CombinedExpression(models.F('from_hold'), '+', models.F('from_available')), '+', models.F('owed')), '+', models.F('voucher_funded')), 2))), name='charge_funded_exactly'),
        ),
        migrations.AddConstraint(
            model_name='charge',
            constraint=models.CheckConstraint(condition=models.Q(('voucher_funded__gte', 0)), name='charge_voucher_funded_not_negative'),
        ),
    ]
