-- orders: every order of the three sales systems, one row each, attributed to a customer.
-- Grain: one order (Shopify order, Square transaction, legacy POS receipt).
-- Times are UTC: the lake's instants, read in p13n's UTC sessions (DuckDB and Spark alike).
-- Columns: customer_id, order_id (prefixed by system), ordered_at, channel (web | app | store), revenue_usd.
-- Customers are found through gold.identity_keys: Shopify customer ids, loyalty ids (both POS systems)
-- and, for Square, the card holder's email pseudonym. Unattributed orders are left out.
SELECT k.customer_id,
       'shopify:' || o.order_id AS order_id,
       CAST(o.created_at AS TIMESTAMP) AS ordered_at,
       CASE WHEN o.channel = 'app' THEN 'app' ELSE 'web' END AS channel,
       CAST(o.total_usd AS DOUBLE) AS revenue_usd
FROM {{ silver.shopify_orders }} o
JOIN {{ gold.identity_keys }} k ON k.key_type = 'shopify_customer_id' AND k.key_value = o.customer_id
UNION ALL
SELECT coalesce(kl.customer_id, ke.customer_id) AS customer_id,
       'square:' || t.transaction_id AS order_id,
       CAST(t.created_at AS TIMESTAMP) AS ordered_at,
       'store' AS channel,
       CAST(t.total AS DOUBLE) AS revenue_usd
FROM {{ silver.square_transactions }} t
LEFT JOIN {{ gold.identity_keys }} kl ON kl.key_type = 'loyalty_id' AND kl.key_value = t.loyalty_id
LEFT JOIN {{ gold.identity_keys }} ke ON ke.key_type = 'email_hmac' AND ke.key_value = t.customer_email_hmac
WHERE coalesce(kl.customer_id, ke.customer_id) IS NOT NULL
UNION ALL
SELECT k.customer_id,
       'legacy:' || p.receipt_no AS order_id,
       CAST(min(p.sold_at) AS TIMESTAMP) AS ordered_at,
       'store' AS channel,
       CAST(sum(p.amount) AS DOUBLE) AS revenue_usd
FROM {{ silver.legacy_pos_sales }} p
JOIN {{ gold.identity_keys }} k ON k.key_type = 'loyalty_id' AND k.key_value = p.loyalty_id
GROUP BY k.customer_id, p.receipt_no
