export function when(iso: string | null | undefined): string {
  if (!iso) return "-";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function seconds(value: number | null | undefined): string {
  if (value === null || value === undefined) return "-";
  return value < 120 ? `${value.toFixed(1)} s` : `${Math.round(value / 60)} min`;
}
