"""Nodes remember that their worker is draining, so that no pass binds work to them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on both engines (SQLite adds a NOT NULL column with a constant default,
# and drops one since 3.35): no table copy, and `ffrtmp db upgrade --sql` can print it.


def upgrade() -> None:
    op.add_column('nodes', sa.Column('draining', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column('nodes', 'draining')
