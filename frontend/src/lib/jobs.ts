import { useEffect, useState } from "react";
import { api } from "./api";
import type { Job } from "./types";
import { useTopic } from "./ws";

/** The dashboard's jobs, kept current by the ``jobs`` topic (a snapshot first, then changes). */
export function useJobs(kind?: string): { jobs: Job[]; cancel: (id: string) => void } {
  const [jobs, setJobs] = useState<Job[]>([]);
  useEffect(() => {
    api<{ jobs: Job[] }>("jobs").then((d) => setJobs(d.jobs)).catch(() => undefined);
  }, []);
  useTopic("jobs", (msg) => {
    if (msg.snapshot) {
      setJobs((msg.data as Job[]) ?? []);
      return;
    }
    const job = msg.data as Job;
    setJobs((prev) => [job, ...prev.filter((j) => j.id !== job.id)]);
  });
  const cancel = (id: string) => {
    api(`jobs/${id}/cancel`, { method: "POST" }).catch(() => undefined);
  };
  return { jobs: kind ? jobs.filter((j) => j.kind === kind) : jobs, cancel };
}
