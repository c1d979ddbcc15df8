"""``flexpl report``: HTML reports, figures and tables from results folders."""
